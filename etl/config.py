"""Typed pipeline configuration: a TOML file, then ETL_* environment overrides, then CLI flags.

Every refusal names the key, the file it came from, the value and what would be valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.errors import ConfigError

DEFAULT_CONFIG = "pipeline.toml"
NO_FILE = "<defaults>"  # `Config.path` when no config file was found (every value a default or a variable)
NO_FILE_HINT = (f"copy pipeline.example.toml to {DEFAULT_CONFIG} and edit it, or name another file with "
                "--config FILE or $ETL_CONFIG")
# ETL_* variables that are not config keys: read by the CLI, the tests or `make` (everything else ETL_* is a key)
NOT_CONFIG_KEYS = ("ETL_CONFIG", "ETL_DDB_LOCAL_DIR", "ETL_RAY_TESTS", "ETL_TEST_*")
AWS_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


@dataclass(frozen=True)
class AwsSide:
    """Where one side of the pipeline lives: region, optional role (cross-account) and endpoint."""

    aws_region: str = ""  # unset: AWS_REGION, AWS_DEFAULT_REGION, the profile's region, else us-east-1
    role_arn: str | None = None  # assumed with STS before any call of this side
    endpoint_url: str | None = None  # e.g. a local emulator; AWS_ENDPOINT_URL also works
    profile: str | None = None  # a named profile; AWS_PROFILE also works


@dataclass(frozen=True)
class SourceConfig(AwsSide):
    table_template: str = "CustomerTracker_{domain}_{region}_{month}"


@dataclass(frozen=True)
class StagingConfig(AwsSide):
    root: str = ""  # s3://bucket/prefix or a local directory
    account: str | None = None  # the bucket owner's account (exports name it); default: these credentials'
    sse: str | None = None  # encryption of every staged object and export: AES256 (SSE-S3) or aws:kms (SSE-KMS)
    kms_key_id: str | None = None  # with sse = "aws:kms": the key (id, ARN or alias); default: the AWS managed key


@dataclass(frozen=True)
class DestinationConfig(AwsSide):
    table_template: str = "{domain}_{region}_AnniversaryPromo_2017"
    partition_key: str = "CustomerID"
    sort_key: str = "CreationDateTime"
    production: bool = True  # ask before writing unless --yes


@dataclass(frozen=True)
class ExportConfig:
    mode: str = "pitr"  # pitr | scan
    concurrency: int = 4  # months exported at once
    poll_max_seconds: float = 30.0  # cap of the backing-off DescribeExport poll
    timeout_seconds: float = 6 * 3600.0
    scan_read_fraction: float | None = 0.5  # share of provisioned RCU a scan export may use
    scan_max_rcu: float | None = None  # absolute RCU/s (required for on-demand tables)
    scan_segments: int = 4
    scan_items_per_file: int = 500_000
    forward_writes_since: str | None = None  # ISO-8601: when the live forward writer went in


@dataclass(frozen=True)
class ColumnSpec:
    """One destination column: `name` <- `source` attribute, converted by `converter`."""

    name: str
    source: str = ""
    converter: str = "string"  # string | int | datetime | ttl
    required: bool = True
    base: str = ""  # for ttl: the destination datetime column it adds ttl_seconds to


@dataclass(frozen=True)
class TransformConfig:
    columns: tuple[ColumnSpec, ...] = (
        ColumnSpec(name="CustomerID", source="CustomerID", converter="string"),
        ColumnSpec(name="CreationDateTime", source="DateTime", converter="datetime"),
        ColumnSpec(name="OrderID", source="OrderID", converter="string"),
        ColumnSpec(name="ExpirationTimestamp", converter="ttl", base="CreationDateTime"),
    )
    ttl_seconds: int = 31_536_000
    non_empty: tuple[str, ...] = ("OrderID", "CustomerID")  # source attributes a row must have
    date_zone: str = "UTC"  # zone of date-only strings
    date_formats: tuple[str, ...] = ()  # extra strptime patterns, e.g. "%a, %d %b %Y %H:%M:%S GMT"
    epoch_unit: str = "s"  # N attributes mapped as datetime: s | ms
    hook: str | None = None  # "module:function" over a pyarrow.Table
    concurrency: int = 2
    row_group_rows: int = 100_000
    collision_bucket_rows: int = 1_000_000  # rows of key fingerprints the collision check sorts at once


@dataclass(frozen=True)
class LoadConfig:
    write_capacity_fraction: float | None = None
    max_wcu: float | None = None
    include_expired: bool = False
    # requests in flight; unset: sized from the budget and the measured round trip (Little's law), which
    # is what reaches the budget at any latency; a number fixes the window (per part being loaded)
    concurrency: int | None = None
    max_in_flight: int = 1000  # the ceiling of the self-sized window, per part being loaded
    price_per_million_wcu: float = 0.625  # USD per million write request units: on-demand, us-east-1
    deadline_seconds: float | None = None
    max_backoff_seconds: float = 20.0  # cap of the exponential backoff (full jitter) between retries
    # how often, at most, a part's progress (its low-water mark) is saved while it loads; 0: after every
    # acknowledged batch that moves it. A resume rewrites the window in flight plus what this interval acknowledged
    checkpoint_seconds: float = 1.0
    read_capacity_fraction: float | None = 0.5  # verify's BatchGetItem budget
    max_rcu: float | None = None
    # how the load writes: batch-write (BatchWriteItem from this tool's processes) or bulk-put (DynamoDB's managed
    # StartBulkPutItems reading input objects this tool writes to the staging bucket; S3 staging only)
    method: str = "batch-write"
    bulk_put_tier: str = "STANDARD"  # STANDARD | ACCELERATED (PerformanceTier)
    bulk_put_compression: str = "ZSTD"  # the input objects: ZSTD | GZIP
    bulk_put_object_mb: float = 256.0  # an input object's target size, uncompressed (the documented limit: 5 GB)
    # one operation's input, uncompressed; a month above it is split into several operations. The tiers' own
    # quotas were not reachable when this was written: set your tier's (Service Quotas, "bulk put items")
    bulk_put_operation_gb: float = 1000.0
    # USD per GB of input for the plan's cost: an assumption (DynamoDB's import-from-S3 price in us-east-1, also
    # billed per GB); bulk put's own price was not reachable when this was written: set yours from the pricing page
    bulk_put_price_per_gb: float = 0.15
    bulk_put_poll_seconds: float = 30.0  # the longest wait between two DescribeBulkOperation calls


@dataclass(frozen=True)
class VerifyConfig:
    """How `etl verify` checks the destination (`--method` overrides `method`)."""

    method: str = "read"  # read: BatchGetItem of every loaded key (read capacity) | export: a PITR export (none)
    # export: rows per key-hash bucket and side; a comparison task holds about two buckets' keys and values
    bucket_rows: int = 2_000_000
    concurrency: int = 4  # the local pool's comparison tasks at once
    # USD per GB of table size for a full export to S3 (us-east-1: https://aws.amazon.com/dynamodb/pricing/on-demand/,
    # "Data export to Amazon S3"; the same price on the provisioned page)
    export_price_per_gb: float = 0.10
    # USD per million read request units, on demand, us-east-1 (same page): what the read-back would cost
    price_per_million_rcu: float = 0.125


@dataclass(frozen=True)
class EngineConfig:
    """Where the stages' tasks run."""

    kind: str = "local"  # local: thread pools in this process | ray: Ray tasks on a cluster (the ray extra)
    # ray: "" starts a Ray instance on this machine (or joins $RAY_ADDRESS); "auto" joins the cluster this
    # machine belongs to; "ray://head:10001" connects through Ray Client; "head:6379" joins by GCS address
    address: str = ""
    task_retries: int = 2  # a task that failed with a transient error runs again up to this often
    worker_retries: int = 3  # ray: a task whose worker process or node died runs again up to this often


@dataclass(frozen=True)
class PromoConfig:
    loyalty_months: int = 3
    loyalty_percent: int = 10
    anniversary_months: int = 24
    anniversary_percent: int = 5
    zone: str = "UTC"


@dataclass(frozen=True)
class LocalConfig:
    port: int = 5050
    state_dir: str = ".etl-local"


@dataclass(frozen=True)
class Config:
    domain: str = ""
    region: str = ""  # the {region} label in table names (a business name, not an AWS region)
    source: SourceConfig = field(default_factory=SourceConfig)
    staging: StagingConfig = field(default_factory=StagingConfig)
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    promo: PromoConfig = field(default_factory=PromoConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    path: str = NO_FILE  # where the config came from (not a TOML key)
    sources: tuple[tuple[str, str], ...] = ()  # key -> where its value came from, for values not defaulted

    def source_table(self, month: str) -> str:
        self._names_needed("source.table_template", self.source.table_template)
        return self.source.table_template.format(domain=self.domain, region=self.region, month=month)

    def destination_table(self) -> str:
        self._names_needed("destination.table_template", self.destination.table_template)
        return self.destination.table_template.format(domain=self.domain, region=self.region)

    def _names_needed(self, key: str, template: str) -> None:
        for name in ("domain", "region"):
            if "{" + name + "}" in template and not getattr(self, name):
                raise _fail(name, self.path, getattr(self, name),
                            f"a non-empty name ({key} uses {{{name}}}); set it at the top of the config "
                            f"or with ETL_{name.upper()}")

    def hash_of(self, *sections: str) -> str:
        """A short hash of the sections that shape a stage's output (recorded in its manifest)."""
        data = {s: _jsonable(getattr(self, s)) for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- building and checking


def _fail(key: str, where: str, value: Any, valid: str) -> ConfigError:
    if where == NO_FILE:  # the value is a default because there is no file: that is what to say
        return _no_file(f"{key} has no value")
    return ConfigError(f"config: {key} = {value!r} (from {where}) is not valid: expected {valid}")


def _no_file(what: str) -> ConfigError:
    here = Path(DEFAULT_CONFIG).resolve()
    return ConfigError(f"config: no ./{DEFAULT_CONFIG} found (looked for {here}; no --config or $ETL_CONFIG given), "
                       f"so {what}", hint=NO_FILE_HINT)


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value == "" and type(None) in args):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise _fail(key, where, value, "a list")
        return tuple(_coerce(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _fail(key, where, value, "a table")
        return _build(tp, value, key, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        raise _fail(key, where, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise _fail(key, where, value, "an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _fail(key, where, value, "an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise _fail(key, where, value, "a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _fail(key, where, value, "a number") from None
    if tp is str:
        if not isinstance(value, str):
            raise _fail(key, where, value, "a string")
        return value
    return value


def _build(cls: Any, data: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name not in ("path", "sources")}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"config: unknown key {prefix + '.' if prefix else ''}{unknown[0]} in {where}; "
            f"valid keys here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key, where)
    return cls(**kwargs)


def _env_names() -> dict[str, tuple[str, str]]:
    """Every ETL_<SECTION>_<KEY> (or ETL_<KEY> for a top-level key) -> (section, key)."""
    out = {}
    for f in dataclasses.fields(Config):
        if f.name in ("path", "sources"):
            continue
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            for g in dataclasses.fields(sub):
                out[f"ETL_{f.name}_{g.name}".upper()] = (f.name, g.name)
        else:
            out[f"ETL_{f.name}".upper()] = ("", f.name)
    return out


def _env_overrides(env: typing.Mapping[str, str]) -> list[tuple[str, str, str]]:
    """ETL_<SECTION>_<KEY> (or ETL_<KEY> for top-level keys) -> (section, key, value)."""
    return [(section, key, env[name]) for name, (section, key) in _env_names().items() if name in env]


def unknown_env_variables(env: typing.Mapping[str, str]) -> list[tuple[str, str | None]]:
    """ETL_* variables that no config key reads (a misspelling would be ignored without a word), each with the
    nearest key's variable when one is close."""
    import difflib
    import fnmatch

    known = list(_env_names())
    out = []
    for name in sorted(env):
        if not name.startswith("ETL_") or name in known or any(fnmatch.fnmatchcase(name, p) for p in NOT_CONFIG_KEYS):
            continue
        nearest = difflib.get_close_matches(name, known + [p for p in NOT_CONFIG_KEYS if "*" not in p], n=1,
                                            cutoff=0.75)
        out.append((name, nearest[0] if nearest else None))
    return out


def load_config(
    path: str | None = None,
    env: typing.Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Read the TOML file (`path`, else $ETL_CONFIG, else ./pipeline.toml), then env, then overrides."""
    env = os.environ if env is None else env
    explicit = path or env.get("ETL_CONFIG")
    file = Path(explicit or DEFAULT_CONFIG)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: {file} is not valid TOML: {exc}") from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"config: {file} cannot be read: {exc.strerror}") from None
    elif explicit:
        raise ConfigError(
            f"config file {file} not found",
            hint="pass --config FILE, set ETL_CONFIG, or copy pipeline.example.toml to pipeline.toml",
        )
    where = str(file) if file.exists() else NO_FILE
    cfg: Config = _build(Config, data, "", where)
    changes: dict[str, dict[str, tuple[Any, str]]] = {}
    for section, key, value in _env_overrides(env):
        env_name = f"ETL_{section}_{key}".upper() if section else f"ETL_{key}".upper()
        changes.setdefault(section, {})[key] = (value, f"environment {env_name}")
    for section, kv in (overrides or {}).items():
        for key, value in kv.items():
            if value is not None:
                changes.setdefault(section, {})[key] = (value, "command line")
    for section, kv in changes.items():
        if section:
            sub = getattr(cfg, section)
            hints = typing.get_type_hints(type(sub))
            new = {k: _coerce(hints[k], v, f"{section}.{k}", w) for k, (v, w) in kv.items()}
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(sub, **new)})
        else:
            hints = typing.get_type_hints(Config)
            cfg = dataclasses.replace(cfg, **{k: _coerce(hints[k], v, k, w) for k, (v, w) in kv.items()})
    sources = {key: where for key in _keys(data)}
    sources.update({(f"{section}.{key}" if section else key): w
                    for section, kv in changes.items() for key, (_, w) in kv.items()})
    cfg = _regions(dataclasses.replace(cfg, path=where), env, sources)
    cfg = dataclasses.replace(cfg, sources=tuple(sorted(sources.items())))
    validate(cfg, sources)
    return cfg


def _keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys a TOML document sets (tables of tables flattened; a list of tables is one key)."""
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out += _keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _regions(cfg: Config, env: typing.Mapping[str, str], sources: dict[str, str]) -> Config:
    """A side without aws_region takes the region boto3 would: AWS_REGION, AWS_DEFAULT_REGION, then the
    profile's (or the default profile's) region in ~/.aws/config."""
    for side in ("source", "staging", "destination"):
        s: AwsSide = getattr(cfg, side)
        if s.aws_region:
            continue
        region, source = "", ""
        for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            if env.get(name):
                region, source = env[name], f"environment {name}"
                break
        if not region:
            import botocore.session

            session = botocore.session.Session(profile=s.profile or env.get("AWS_PROFILE") or None)
            try:
                region = session.get_config_variable("region") or ""
            except Exception:  # a profile that does not exist: said by validate() as a missing region
                region = ""
            source = f"profile {s.profile or env.get('AWS_PROFILE') or 'default'}" if region else ""
        if not region:  # nothing says: us-east-1, AWS's own default, shown as such by `etl config show`
            region, source = "us-east-1", "default (no AWS_REGION, AWS_DEFAULT_REGION or profile region)"
        sources[f"{side}.aws_region"] = source
        new: dict[str, Any] = {side: dataclasses.replace(s, aws_region=region)}
        cfg = dataclasses.replace(cfg, **new)
    return cfg


SECRET_WORDS = ("secret", "password", "token", "credential")


def effective(cfg: Config) -> list[dict[str, Any]]:
    """Every setting with its value and where it came from (a file, a variable, the command line or the
    default); a URL's user:password part and anything that looks like a secret are masked."""
    sources = dict(cfg.sources)
    rows: list[dict[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            if f.name in ("path", "sources"):
                continue
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, key + ".")
                continue
            value = _jsonable(value)
            if isinstance(value, str):
                value = re.sub(r"//[^/@\s]+@", "//***@", value)
            if any(w in f.name.lower() for w in SECRET_WORDS) and value:
                value = "***"
            rows.append({"key": key, "value": value, "source": sources.get(key, "default")})

    walk(cfg, "")
    return rows


class _Where(dict[str, str]):
    """Where each key's value came from: the file, unless an ETL_* variable or the command line set it."""

    def __init__(self, sources: dict[str, str], default: str) -> None:
        super().__init__(sources)
        self.default = default

    def __missing__(self, key: str) -> str:
        section = key.split("[", 1)[0]
        return self.get(section, self.default) if section != key else self.default


def validate(cfg: Config, sources: dict[str, str] | None = None) -> None:
    """Refuse a value that cannot work, naming the key and where its value came from (file or variable)."""
    where = _Where(sources or {}, cfg.path)
    _validate_sides(cfg, where)
    _validate_export(cfg, where)
    _validate_mapping(cfg, where)
    _validate_load(cfg, where)


def _validate_sides(cfg: Config, where: _Where) -> None:
    for side in ("source", "staging", "destination"):
        s: AwsSide = getattr(cfg, side)
        if not AWS_REGION_RE.match(s.aws_region):
            raise _fail(f"{side}.aws_region", where[f"{side}.aws_region"], s.aws_region,
                        "an AWS region such as us-east-1")
        if s.role_arn and not s.role_arn.startswith("arn:aws"):
            raise _fail(f"{side}.role_arn", where[f"{side}.role_arn"], s.role_arn,
                        "an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if s.endpoint_url and not re.match(r"^https?://", s.endpoint_url):
            raise _fail(f"{side}.endpoint_url", where[f"{side}.endpoint_url"], s.endpoint_url, "an http(s):// URL")
    for key, template, needed in (
        ("source.table_template", cfg.source.table_template, {"month"}),
        ("destination.table_template", cfg.destination.table_template, set()),
    ):
        fields = set(re.findall(r"{(\w*)}", template))
        bad = fields - {"domain", "region", "month"}
        if bad or not needed <= fields:
            raise _fail(key, where[key], template, "a table name using only {domain}, {region} and {month}"
                        + (" and containing {month}" if needed else ""))
    st = cfg.staging
    if st.sse not in (None, "AES256", "aws:kms"):
        raise _fail("staging.sse", where["staging.sse"], st.sse, "'AES256' (SSE-S3) or 'aws:kms' (SSE-KMS)")
    if st.kms_key_id and st.sse != "aws:kms":
        raise _fail("staging.kms_key_id", where["staging.kms_key_id"], st.kms_key_id, "only with sse = \"aws:kms\"")
    if st.account and not re.match(r"^\d{12}$", st.account):
        raise _fail("staging.account", where["staging.account"], st.account, "a 12-digit AWS account id")
    root = cfg.staging.root
    if (root.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", root)) \
            or (not root.startswith("s3://") and "://" in root):
        raise _fail("staging.root", where["staging.root"], root, "s3://bucket/prefix or a local directory")


def _validate_export(cfg: Config, where: _Where) -> None:
    e = cfg.export
    if e.mode not in ("pitr", "scan"):
        raise _fail("export.mode", where["export.mode"], e.mode, "'pitr' or 'scan'")
    _fraction("export.scan_read_fraction", e.scan_read_fraction, where)
    _positive("export.scan_max_rcu", e.scan_max_rcu, where)
    for key, value in (("export.concurrency", e.concurrency), ("export.scan_segments", e.scan_segments),
                       ("export.scan_items_per_file", e.scan_items_per_file),
                       ("transform.concurrency", cfg.transform.concurrency),
                       ("transform.row_group_rows", cfg.transform.row_group_rows),
                       ("transform.collision_bucket_rows", cfg.transform.collision_bucket_rows)):
        if value < 1:
            raise _fail(key, where[key], value, "an integer >= 1")
    _validate_engine(cfg, where)


def _validate_engine(cfg: Config, where: _Where) -> None:
    eng = cfg.engine
    if eng.kind not in ("local", "ray"):
        raise _fail("engine.kind", where["engine.kind"], eng.kind, "'local' or 'ray'")
    for key, value in (("engine.task_retries", eng.task_retries), ("engine.worker_retries", eng.worker_retries)):
        if value < 0:
            raise _fail(key, where[key], value, "an integer >= 0")
    if eng.address and not re.match(r"^(auto|local|ray://[\w.\-\[\]:]+:\d+|[\w.\-\[\]:]+:\d+)$", eng.address):
        raise _fail("engine.address", where["engine.address"], eng.address,
                    "'' (a Ray instance on this machine), 'auto', 'ray://HEAD:10001' or 'HEAD:6379'")
    if eng.kind != "ray":
        return
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"config: engine.kind = 'ray' (from {where['engine.kind']}) needs Ray, which is not "
                          "installed", hint="pip install 'etl-anniversary[ray]' (the ray extra), or use "
                                            "--engine local")
    remote = eng.address.startswith("ray://") and not re.match(r"^ray://(localhost|127\.[\d.]+|\[::1\]):",
                                                                 eng.address)
    if remote and not cfg.staging.root.startswith("s3://"):
        raise _fail("staging.root", where["staging.root"], cfg.staging.root,
                    f"an s3:// root: the workers of the cluster at {eng.address} cannot read a directory of "
                    "this machine")


def _validate_mapping(cfg: Config, where: _Where) -> None:
    """A mapping that validates must run: columns are distinct, key columns exist and are required."""
    t = cfg.transform
    names = [c.name for c in t.columns]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _fail("transform.columns", where["transform.columns"], names,
                    f"distinct column names ({dup!r} is named twice)")
    for i, c in enumerate(t.columns):
        key = f"transform.columns[{i}]"
        if c.converter not in ("string", "int", "datetime", "ttl"):
            raise _fail(f"{key}.converter", where[key], c.converter, "string, int, datetime or ttl")
        if c.converter == "ttl" and c.base not in names:
            raise _fail(f"{key}.base", where[key], c.base, f"one of the columns {names}")
        if c.converter != "ttl" and not c.source:
            raise _fail(f"{key}.source", where[key], c.source, "the source attribute name")
    d = cfg.destination
    for name, value in (("destination.partition_key", d.partition_key), ("destination.sort_key", d.sort_key)):
        if name == "destination.sort_key" and not value:
            continue  # a table without a sort key
        if value not in names:
            raise _fail(name, where[name], value, f"a transformed column (one of {names})")
        col = t.columns[names.index(value)]
        if not col.required:
            raise _fail(f"transform.columns[{names.index(value)}].required", where["transform.columns"], False,
                        f"true: {value} is the destination's {name.rsplit('.', 1)[-1]}, and DynamoDB refuses an "
                        "item without its key")
    if d.sort_key and d.sort_key == d.partition_key:
        raise _fail("destination.sort_key", where["destination.sort_key"], d.sort_key,
                    "a column other than the partition key (or \"\" for a table without a sort key)")
    from etl.convert import MAX_EPOCH, MIN_EPOCH

    if not 0 <= t.ttl_seconds <= MAX_EPOCH - MIN_EPOCH:
        raise _fail("transform.ttl_seconds", where["transform.ttl_seconds"], t.ttl_seconds,
                    f"an integer from 0 to {MAX_EPOCH - MIN_EPOCH} (years 0001 to 9999)")
    if t.epoch_unit not in ("s", "ms"):
        raise _fail("transform.epoch_unit", where["transform.epoch_unit"], t.epoch_unit, "'s' or 'ms'")
    for fmt in t.date_formats:  # without a year the date lands in 1900 (and Python 3.15 refuses to parse it)
        if not re.search(r"%[YyGcx]", fmt.replace("%%", "")):
            raise _fail("transform.date_formats", where["transform.date_formats"], fmt,
                        "strptime patterns with a year (%Y or %y)")
    if t.hook and not re.match(r"^[\w.]+:\w+$", t.hook):
        raise _fail("transform.hook", where["transform.hook"], t.hook, "'module:function'")
    from zoneinfo import ZoneInfo

    for key, zone in (("transform.date_zone", t.date_zone), ("promo.zone", cfg.promo.zone)):
        try:
            ZoneInfo(zone)
        except Exception:
            raise _fail(key, where[key], zone, "an IANA zone such as UTC or Europe/Berlin") from None


def _validate_load(cfg: Config, where: _Where) -> None:
    ld = cfg.load
    _fraction("load.write_capacity_fraction", ld.write_capacity_fraction, where)
    _positive("load.max_wcu", ld.max_wcu, where)
    if ld.write_capacity_fraction is not None and ld.max_wcu is not None:
        raise ConfigError(
            f"config: set either load.write_capacity_fraction (from {where['load.write_capacity_fraction']}) or "
            f"load.max_wcu (from {where['load.max_wcu']}), not both"
        )
    _fraction("load.read_capacity_fraction", ld.read_capacity_fraction, where)
    _positive("load.max_backoff_seconds", ld.max_backoff_seconds, where)
    if ld.checkpoint_seconds < 0:
        raise _fail("load.checkpoint_seconds", where["load.checkpoint_seconds"], ld.checkpoint_seconds,
                    "a number of seconds >= 0 (0: save the progress after every acknowledged batch)")
    _positive("load.max_rcu", ld.max_rcu, where)
    for key, value in (("load.concurrency", ld.concurrency), ("load.max_in_flight", ld.max_in_flight)):
        if value is not None and value < 1:
            raise _fail(key, where[key], value, "an integer >= 1" + (" (or unset: sized from the budget and the "
                                                                   "round trip)" if key == "load.concurrency" else ""))
    _validate_bulk_put(ld, where)
    if ld.price_per_million_wcu < 0:
        raise _fail("load.price_per_million_wcu", where["load.price_per_million_wcu"], ld.price_per_million_wcu,
                    "a price >= 0 in USD per million write request units (us-east-1 on-demand: 0.625)")
    _validate_verify(cfg, where)
    if not 1 <= cfg.local.port <= 65535:
        raise _fail("local.port", where["local.port"], cfg.local.port, "a TCP port 1-65535")


def _validate_verify(cfg: Config, where: _Where) -> None:
    v = cfg.verify
    if v.method not in VERIFY_METHODS:
        raise _fail("verify.method", where["verify.method"], v.method,
                    "'read' (BatchGetItem of every loaded key) or 'export' (a PITR export of the table)")
    for key, value in (("verify.bucket_rows", v.bucket_rows), ("verify.concurrency", v.concurrency)):
        if value < 1:
            raise _fail(key, where[key], value, "an integer >= 1")
    for key, price in (("verify.export_price_per_gb", v.export_price_per_gb),
                       ("verify.price_per_million_rcu", v.price_per_million_rcu)):
        if price < 0:
            raise _fail(key, where[key], price, "a price >= 0 in USD")


LOAD_METHODS = ("batch-write", "bulk-put")
VERIFY_METHODS = ("read", "export")
BULK_PUT_TIERS = ("STANDARD", "ACCELERATED")
BULK_PUT_COMPRESSIONS = ("ZSTD", "GZIP")
BULK_PUT_MAX_OBJECT_MB = 5 * 1024  # the developer guide: each input object up to 5 GB


def _validate_bulk_put(ld: LoadConfig, where: _Where) -> None:
    if ld.method not in LOAD_METHODS:
        raise _fail("load.method", where["load.method"], ld.method, " or ".join(LOAD_METHODS))
    if ld.bulk_put_tier not in BULK_PUT_TIERS:
        raise _fail("load.bulk_put_tier", where["load.bulk_put_tier"], ld.bulk_put_tier, " or ".join(BULK_PUT_TIERS))
    if ld.bulk_put_compression not in BULK_PUT_COMPRESSIONS:
        raise _fail("load.bulk_put_compression", where["load.bulk_put_compression"], ld.bulk_put_compression,
                    " or ".join(BULK_PUT_COMPRESSIONS))
    if not 0 < ld.bulk_put_object_mb <= BULK_PUT_MAX_OBJECT_MB:
        raise _fail("load.bulk_put_object_mb", where["load.bulk_put_object_mb"], ld.bulk_put_object_mb,
                    f"MB per input object, > 0 and <= {BULK_PUT_MAX_OBJECT_MB} (bulk put reads objects up to 5 GB)")
    for key, value in (("load.bulk_put_operation_gb", ld.bulk_put_operation_gb),
                       ("load.bulk_put_poll_seconds", ld.bulk_put_poll_seconds)):
        _positive(key, value, where)
    if ld.bulk_put_operation_gb * 1024 < ld.bulk_put_object_mb:
        raise _fail("load.bulk_put_operation_gb", where["load.bulk_put_operation_gb"], ld.bulk_put_operation_gb,
                    "at least one input object (load.bulk_put_object_mb)")
    if ld.bulk_put_price_per_gb < 0:
        raise _fail("load.bulk_put_price_per_gb", where["load.bulk_put_price_per_gb"], ld.bulk_put_price_per_gb,
                    "a price >= 0 in USD per GB of input")


def _fraction(key: str, value: float | None, where: _Where) -> None:
    if value is not None and not 0 < value <= 1:
        raise _fail(key, where[key], value, "a fraction 0 < f <= 1 (0.25 means 25%; for an absolute rate "
                    "use the max_* setting)")


def _positive(key: str, value: float | None, where: _Where) -> None:
    if value is not None and value <= 0:
        raise _fail(key, where[key], value, "a number > 0")


def require_staging_root(cfg: Config) -> str:
    if not cfg.staging.root and cfg.path == NO_FILE:
        raise _no_file("staging.root is not set (nor $ETL_STAGING_ROOT)")
    if not cfg.staging.root:
        raise ConfigError(
            f"config: staging.root is not set (looked in {cfg.path} and $ETL_STAGING_ROOT)",
            hint="set [staging] root = \"s3://bucket/prefix\" or a local directory",
        )
    return cfg.staging.root
