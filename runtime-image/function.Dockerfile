# A revision image: the runtime image plus the function's dependencies (installed on the host as wheels
# for the image's Python and platform) and its code. Two layers, so a code change rebuilds in a second.
ARG RUNTIME
FROM ${RUNTIME}
COPY deps/ /opt/fnctl/deps/
COPY code/ /var/task/
