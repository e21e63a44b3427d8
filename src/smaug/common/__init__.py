"""Small helpers every flow uses: errors, output checks and JSONL reading, paths, Hub ids, chat format."""
