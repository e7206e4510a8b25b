"""ExRomana data: safe file I/O (`exromana`), the simulator (`simulate`), preprocessing and splits (`prepare`)."""
