"""In-process tests of the daemon's pieces: supervisor, lifecycle, reload."""
