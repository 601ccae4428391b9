"""Development and benchmarking tools: embedded broker, demo, benchmarks, local set-up. The live path never imports this."""
