"""Text-to-video search: video index (build, memory-mapped read), text-side query, contact sheet."""
