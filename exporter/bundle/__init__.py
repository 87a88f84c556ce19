"""A bundle on disk: the manifest's schema, the door (open, verify), writing (staging, the locked
swap), the report, the stored reference, memory limits."""
