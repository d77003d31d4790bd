"""Device, precision, threads, DDP, background checkpoint writer, allocator: used by every job."""
