// A handler that cannot load: the runtime reports `startup_failed` and exits 3.
throw new Error("boom at import");
