"""Processor modules for SGLang's ``SGLANG_EXTERNAL_MM_PROCESSOR_PACKAGE`` hook (see ``..sglang``)."""
