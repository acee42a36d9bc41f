"""Task environments: knowledge incorporation and few-shot ARC, with their data and tools."""
