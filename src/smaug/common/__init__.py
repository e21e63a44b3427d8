"""Small helpers every flow uses: errors, file writing/reading, paths, records (versions, time), Hub ids, chat format."""
