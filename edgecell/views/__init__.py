"""What the commands print for people (rich tables and lines); the work is in the libraries."""
