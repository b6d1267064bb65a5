"""``pybert serve --ray``: the server's app (every route, its JSON, its limits) as N replicas
behind Ray Serve's HTTP proxy, on one machine or a cluster. Each replica loads the model and
runs ``create_app``'s Starlette app (its lifespan starts its batcher and warms it up), so a
replica answers exactly as ``pybert serve`` does; Ray Serve spreads the requests and, with
``max_replicas`` above ``replicas``, adds replicas while the requests waiting per replica stay
above ``target_queue`` (its autoscaling on ongoing requests). A replica that dies is replaced by
Ray Serve; the requests it held are answered by the proxy with an error (500/503), never
dropped without an answer.

``application(...)`` is the bound Ray Serve application, for ``serve.run`` in your own code;
``run(...)`` is the command line's (a local cluster, or ``address``). The ``ray-serve`` extra:
``pip install "pybert-engine[ray-serve]"``."""

from __future__ import annotations

import signal
import threading

from .config import ServeConfig

__all__ = ["application", "run"]


def application(model: str, config: ServeConfig, replicas: int = 1,
                max_replicas: int | None = None, target_queue: float = 2.0,
                load_options: dict | None = None, cpus_per_replica: float = 1.0,
                gpus_per_replica: float = 0.0):
    """The Ray Serve application of ``model`` (a path or hub id): ``replicas`` replicas (or
    from ``replicas`` to ``max_replicas``, scaled by requests waiting per replica), each a
    TextModel loaded with ``load_options`` (device, dtype, quantize, revision; pooling and the
    default prompt) behind ``config``'s routes and limits."""
    from ray import serve

    options = dict(load_options or {})
    settings = {k: options.pop(k) for k in ("pooling", "default_prompt_name", "default_prompt")
                if k in options}

    def build_app():
        from ..text import load_text_model
        from .app import create_app

        text_model = load_text_model(model, **options)
        text_model.configure(**settings)
        return create_app(text_model, config)

    ingress = serve.ingress(build_app)(type("PybertReplica", (), {}))
    scaling = {"num_replicas": replicas} if not max_replicas or max_replicas <= replicas else \
        {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                "target_ongoing_requests": target_queue}}
    deployment = serve.deployment(
        ingress, name="pybert", max_ongoing_requests=config.max_connections,
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        **scaling)
    return deployment.bind()


def run(model: str, config: ServeConfig, host: str, port: int, address: str | None = None,
        **options) -> None:
    """Serve ``application(model, config, **options)`` on ``host:port`` through Ray Serve's
    proxy until SIGTERM or Ctrl-C (a local Ray cluster started here where ``address`` is
    None, and stopped at the end)."""
    import ray
    from ray import serve

    from ..ray import reaper_of_local_cluster

    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    # A local cluster ends with this process, even one killed with SIGKILL.
    reaper = reaper_of_local_cluster() if address is None else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(model, config, **options), name="pybert", route_prefix="/",
                  blocking=False)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        serve.shutdown()
        ray.shutdown()
        if reaper is not None:
            reaper.stdin.close()
            reaper.wait(30)
