"""Model side: the processor shim, the tiny offline Qwen2-VL, and loading by config."""
