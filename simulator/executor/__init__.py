"""The real executor (extra `executor`: torch): runs a job from the same model config and job
spec the simulator reads, on cuda or cpu, and records a profiler trace plus measured times.
Import `simulator.executor.run` only where torch is wanted (the CLI does so lazily)."""
