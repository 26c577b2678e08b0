# modelpull as a container image: a slim Python base, a non-root user, the [tos,metrics]
# extras, `modelpull` as the entrypoint (arguments are modelpull's: `pull URI DEST ...`).
#
#   docker build -t modelpull:0.1.0 .
#   docker run --rm modelpull:0.1.0 --version
#   docker run --rm -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -v /models:/models \
#       modelpull:0.1.0 pull s3://models/llama-3-8b/ /models/llama-3-8b --preset vllm
#
# The Kubernetes example in deploy/kubernetes/ runs this image as an init container.

ARG PYTHON_IMAGE=python:3.12-slim

# The wheel is built from this checkout (hatchling, fetched by pip for the build only).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
COPY --from=wheel /dist /dist
RUN wheel="$(ls /dist/modelpull-*.whl)" \
    && pip install --no-cache-dir "${wheel}[tos,metrics]" \
    && rm -rf /dist \
    && useradd --create-home --uid 10001 --user-group modelpull
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/modelpull
ENV PYTHONUNBUFFERED=1
# --metrics-port's conventional port (Prometheus' default for exporters of this kind).
EXPOSE 9464
ENTRYPOINT ["modelpull"]
CMD ["--help"]
