"""tracer: a packet-level TCP reset tracer for HAProxy deployments.

Stages (see DESIGN.md): source -> decode -> flows -> attribution -> report.
"""

__version__ = "0.1.0"
