"""Every structured call's way to its kernels: input checks, autocast and half types, the route
choice from the cost model, exact extreme values (:mod:`.pipeline`), and each structure's routes
(:mod:`.routes`)."""
