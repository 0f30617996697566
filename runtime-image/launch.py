"""The runtime image's entry point: imports fnctl_runtime from the bytecode compiled on the host when the image
was built (fnctl.runtimes.python), instead of compiling its source at every start, which cost ~3.5 MiB of the
compiler's memory kept by every idle instance (and CPU time in every cold start). When the bytecode is not
there (a host Python other than the image's), Python compiles the source as before."""

import sys

sys.path.insert(0, "/opt/fnctl")
import fnctl_runtime  # noqa: E402

del sys.path[0]  # the handler's imports search the code and its dependencies, as before
sys.exit(fnctl_runtime.main())
