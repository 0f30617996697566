# A Node.js revision image: the runtime image plus the function's dependencies (installed on the host with
# `npm ci` for linux-x64; Node finds them as /var/task/node_modules) and its code (TypeScript compiled on the
# host). Two layers, so a code change rebuilds in a second.
ARG RUNTIME
FROM ${RUNTIME}
COPY deps/ /var/task/node_modules/
COPY code/ /var/task/
