"""Charts and a Markdown report from the image-storage benchmark suite's pytest-benchmark JSON."""
