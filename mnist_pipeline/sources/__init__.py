"""Where images come from: download, and one reader per source format behind one Source interface."""
