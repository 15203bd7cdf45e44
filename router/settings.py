"""The router's settings: flags over ``MESHSERVE_*`` variables, built once in main."""

from __future__ import annotations

from pydantic import field_validator

from mesh.settings import ByteSize, CommonSettings, check_host_port


class RouterSettings(CommonSettings):
    #: Where the front door listens (management + inference on one port).
    listen: str = "127.0.0.1:8033"
    #: Where the REST front door (KServe V1 + V2 REST) listens; "" = no REST listener.
    #: ``meshserve router`` defaults it to 0.0.0.0:8008 and ``meshserve up`` to
    #: 127.0.0.1:8008; a router built in code (tests, embedding) has none unless asked.
    rest_listen: str = ""
    #: Prometheus metrics HOST:PORT; unset = no metrics endpoint.
    metrics_listen: str | None = None
    #: Deadline for inference requests that arrive without one, in seconds.
    default_timeout_s: float = 60.0
    #: Bound on one loadModel call to a runtime (seconds), also for sync registers.
    load_timeout_s: float = 120.0
    #: A failed load is remembered this long (ModelMesh: 15 min).
    failure_ttl_s: float = 900.0
    #: Active failures after which a model is LOADING_FAILED until they expire.
    max_load_failures: int = 3
    #: (The next four may be overridden live by the policy document's ``router`` section.)
    #: Another copy is added when requests/min per copy exceed this (ModelMesh: 2000).
    scale_up_rpm: int = 2000
    #: Extra copies (beyond a model's min copies, at least 1) unused this long are released.
    idle_copy_s: float = 300.0
    #: How often copy scaling and the janitor run, in seconds.
    scale_interval_s: float = 10.0
    #: Largest request or response message, in bytes (gRPC messages and REST bodies).
    max_message_bytes: ByteSize = 256 * 2**20
    #: Attempts for one inference (other copies, reloads) within its deadline.
    max_attempts: int = 4
    #: A policy document (JSON or YAML) used while the registry's ``config/policy``
    #: key is unset; "" = none (built-in defaults). README "Policies".
    policy_file: str = ""
    #: Per-model metric labels (``meshserve_model_requests_total{model,code}``,
    #: ``meshserve_model_copies{model}``); off: thousands of models, thousands of series.
    metrics_per_model: bool = False
    #: Bearer tokens (one a line, re-read on change) that management calls
    #: (``mmesh.ModelMesh``, ``meshserve.v1.MeshAdmin``) must carry; "" = no tokens.
    auth_token_file: str = ""
    #: With ``auth_token_file``: inference (KServe V2) needs a token too.
    auth_inference: bool = False
    #: Router -> runtime calls over TLS: the CA that signed the runtimes' certificates,
    #: and this router's client certificate and key (runtimes that require mTLS).
    runtime_ca: str = ""
    runtime_cert: str = ""
    runtime_key: str = ""
    #: A file whose first token this router presents on SPI calls to runtimes that
    #: require one (their ``spi_token_file``); "" = none.
    runtime_token_file: str = ""
    #: Seed of the per-request draw of traffic-split targets (unset: random). Callers
    #: sending ``mm-split-key`` get a draw fixed by that key instead.
    split_seed: int | None = None
    #: Serve Envoy's configuration (ADS) on the router's port, for ``meshserve gateway``
    #: (needs the ``envoy`` extra; without it the router serves as before).
    xds: bool = True
    #: With ``runtime_ca`` and xDS: where the router writes the SDS files (its runtime
    #: client certificate, the runtimes' CA) that the runtime clusters it sends Envoy
    #: use for TLS. Envoy must see this folder and those files at the same paths
    #: (the same pod or host); "" = a new temporary folder.
    xds_sds_dir: str = ""
    #: URLs an InferenceService's status shows clients (``status.url``,
    #: ``components.predictor.grpcUrl`` / ``restUrl``); "" = ``grpc://<listen>`` and
    #: ``http://<rest listen>`` (none while REST is off). Set them to the address behind a
    #: load balancer.
    public_grpc_url: str = ""
    public_rest_url: str = ""

    @field_validator("rest_listen")
    @classmethod
    def _check_rest_listen(cls, v: str) -> str:
        return check_host_port(v, "rest-listen address") if v else v
