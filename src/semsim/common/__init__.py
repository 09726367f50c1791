"""Infrastructure every stage uses: atomic file writes, tables, progress bars."""
