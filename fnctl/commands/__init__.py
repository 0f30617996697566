"""One module per verb or group of verbs, called by the CLI, the gateway and the tests alike: each takes a project and plain options and returns values (never prints)."""
