# The Focus Sessions app image: one image, one entry point (`focus`), the command picks the role
# (migrate | project | api | emit | simulate | schema). See compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY contracts/ contracts/
COPY projections/ projections/
COPY consumers/ consumers/
COPY producers/ producers/
COPY migrations/ migrations/
COPY focus_sessions/ focus_sessions/
RUN pip install . \
    && useradd --create-home --uid 10001 focus

USER focus
# The embedded servers are for development; a container always gets real ones from compose.
ENV FOCUS_DATA_DIR=/home/focus/.focus

ENTRYPOINT ["focus"]
CMD ["--help"]
