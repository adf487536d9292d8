"""sglc's inference runtime (imported as `sglc_runtime`); it never imports `sglc`."""
