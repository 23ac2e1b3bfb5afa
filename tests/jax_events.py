"""Counting what JAX traces and compiles (deterministic stand-ins for wall-clock asserts)."""

from __future__ import annotations

import contextlib

import jax

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting():
    """Yields `{"traces": [...], "compiles": [...]}`: the names of the functions JAX traced to a jaxpr
    and compiled with XLA inside the block (jax.monitoring's compile events; a cache hit is
    neither)."""
    seen = {"traces": [], "compiles": []}

    def listener(event, duration, **kwargs):
        if event == TRACE:
            seen["traces"].append(kwargs.get("fun_name"))
        elif event == COMPILE:
            seen["compiles"].append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
