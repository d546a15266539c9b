"""The bottom layer every other package may use: atomic file writes, the run folder's names, checkpoint files
(writer, manifest, checksums), test fault hooks, and host memory."""
