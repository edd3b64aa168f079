"""Live capture (`tracer live`): dumpcap's pcapng stream through the offline stages, in windows.

Modules: capture (dumpcap as a child process), source (the pipe to decoded batches, the saved
file), rolling (pure: when RSTs are settled and attributed, per-window aggregates, bounded
memory), view (the per-interval document, text and JSON lines), metrics (the Prometheus
endpoint), run (the asyncio loop and stopping).
"""
