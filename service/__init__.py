"""lookalike's online half: serve a model artifact over HTTP (see app.py and __main__.py)."""

import os

# onnxruntime's telemetry would write a device id under $HOME/.cache (often not writable in a
# container) and print a plain-text warning when it cannot: every log line must stay JSON.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
