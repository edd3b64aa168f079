# Benchmarks for tracer: capture generators and throughput/memory measurements (see README.md).
