"""Where images come from: the data set registry, download, and one reader per source format."""
