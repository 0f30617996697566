"""GitOps: the git boundary (`gitrepo`), `fnctl sync`, the push hook, and the record of which commit each deploy made live."""
