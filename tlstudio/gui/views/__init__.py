"""Small result views with explicit inputs (heat map overlay, metrics), shared by panels."""
