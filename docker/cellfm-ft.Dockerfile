# syntax=docker/dockerfile:1
# cellfm-ft on CUDA. Build from the repository root (the context needs shared/ and constraints/):
#     docker build -f docker/cellfm-ft.Dockerfile -t cellfm-ft .
#     docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$PWD/runs:/home/ft/work/runs" cellfm-ft   # embedded default
#     docker run --rm --gpus all -v "$PWD:/home/ft/work" cellfm-ft --help
# Stage `build` has pip, the sources and the compiler-free install; the final stage only Python
# and the finished venv. torch 2.13.0's Linux wheel is the CUDA build and carries its CUDA
# runtime as pip packages; the nvidia/cuda base adds the driver hookup (NVIDIA_* variables).
# Ubuntu packages are pinned to their upstream version (python3.12=3.12.3-*): the Ubuntu
# revision floats so security updates still apply; Python packages are pinned by constraints/.

FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.3-* python3.12-venv=3.12.3-* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY constraints/ constraints/
COPY shared/ shared/
COPY packages/cellfm-ft/ packages/cellfm-ft/
# The README's install: `pip install packages/cellfm-ft` brings the core from ../../shared with it.
RUN python3.12 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints/gpu.txt packages/cellfm-ft \
    && /opt/venv/bin/python -c "import ftcore, cellfm_ft"

FROM nvidia/cuda:12.8.1-base-ubuntu24.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.3-* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 ft && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ft
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg
USER 10001:10001
WORKDIR /home/ft/work
ENTRYPOINT ["cellfm-ft"]
