"""Adapters between flowkit and other libraries (imported on demand: ``flowkit.interop.nflows``)."""
