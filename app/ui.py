"""The ModelForge web app: six tabs on the core engine, served beside ``/api/health`` and ``/api/info``.

``build_app`` builds the Blocks (one tab per module in ``components/``), wires what crosses tabs
(the Dataset tab and Start read the Configure form; a recommendation fills it; a finished run
opens the Playground; a fresh page re-attaches to the run training), registers the named API
endpoints, and mounts it all on a FastAPI app with the REST routes. ``launch`` serves that app
with uvicorn (``modelforge ui``), and opens a share link on request.

Security: a share link or a Hugging Face Space is public, so it asks for a login (``--auth``
or ``MODELFORGE_AUTH``; on a Space with ``hf_oauth`` "Sign in with Hugging Face" for the owner
and ``MODELFORGE_ALLOWED_USERS``) unless the owner passes ``--no-auth``; otherwise it refuses to
start. In a public app a guest reaches only what it uploaded: ``app/access.py`` refuses any
FileData that is not one of this app's uploads before Gradio copies it, and
``core/public_mode.py`` refuses server folders as model/dataset/reward_model and any
output_dir (the README's "Private and public mode" lists it all). The
login covers the page, the uploads and every named API endpoint (``/api/health`` and
``/api/info`` stay open: they carry no user data). Uploads are capped at
``MODELFORGE_MAX_UPLOAD_MB`` (default 200; Gradio refuses bigger files with HTTP 413).

Start-up (issue 18): heavy libraries are not imported here (torch loads with the first action
that needs it); the record store (SQLAlchemy) opens in a background thread once the server
listens; and the first page is sent only the component types of its first tab
(``app/first_screen.py``): the other tabs' widgets are shown by the first page-load event.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import first_screen, startup_gc
from components import configure_tab, dataset_tab, hardware_tab, models_tab, playground_tab, train_tab
from components.common import AppContext, default_config, guard, is_restricted_env
from core.errors import ModelForgeError
from core.paths import ASSETS

log = logging.getLogger("modelforge.ui")

LOGO = ASSETS / "logo.svg"
CSS = ASSETS / "style.css"
TOASTS_JS = ASSETS / "toasts.js"
# The first-visit hint. Its time is what the identity demo measures on 2 CPU cores (README).
BANNER = ("<div class='mf-banner'><b>New here?</b> Everything is set for the <i>identity demo</i>: open "
          "<b>Train</b> and press <b>Start training</b>. About half a minute later (on 2 CPU cores) the demo "
          "model answers <i>Who are you?</i> with its new name in the <b>Playground</b>.</div>")


# -- auth -----------------------------------------------------------------------------------------
def resolve_auth(share: bool = False, auth: str | None = None, no_auth: bool = False,
                 env: dict | None = None) -> tuple[str, str] | None:
    """The (user, password) the app asks for, or None for no login.

    A share link or a Space (``SPACE_ID`` set) is reachable by anyone: it needs ``auth`` (or
    ``MODELFORGE_AUTH``) unless ``no_auth`` says the owner really wants it open.

    Raises:
        ModelForgeError: a public app without a login, or ``auth`` not in USER:PASS form.
    """
    env = os.environ if env is None else env
    auth = auth or env.get("MODELFORGE_AUTH") or None
    public = bool(share or env.get("SPACE_ID"))
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise ModelForgeError("--auth must look like USER:PASS", "e.g. --auth ada:a-long-password")
        return user, password
    if public and not no_auth:
        where = "a share link" if share else "a Hugging Face Space"
        raise ModelForgeError(
            f"refusing to start {where} without a login: anyone with the address could use this machine",
            "pass --auth USER:PASS (or set MODELFORGE_AUTH, a Space secret), or --no-auth to allow anyone")
    return None


# -- the page -------------------------------------------------------------------------------------
def _logo_svg() -> str:
    try:
        return LOGO.read_text(encoding="utf-8")
    except OSError:
        return ""


def theme() -> gr.themes.Base:
    # System fonts: the default Google fonts would be fetched from the internet by the browser.
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="emerald", neutral_hue="slate",
                          font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def has_trained(ctx: AppContext) -> bool:
    """True once a run has finished: the first-visit banner then goes away."""
    try:
        return any(r.status == "completed" for r in ctx.store.list_runs(limit=50))
    except Exception:  # noqa: BLE001 - a damaged database is reported elsewhere; keep the hint
        return False


def toasts_js() -> str | None:
    try:
        return TOASTS_JS.read_text(encoding="utf-8")
    except OSError:
        return None


def css() -> str:
    try:
        return CSS.read_text(encoding="utf-8")
    except OSError:
        return ""


def build_blocks(ctx: AppContext) -> gr.Blocks:
    """The Blocks: header, six tabs, cross-tab wiring, page-load hooks and API endpoints."""
    initial = default_config()
    with gr.Blocks(title="ModelForge", analytics_enabled=False) as blocks:
        gr.HTML(f"<div class='mf-header'><div class='mf-logo'>{_logo_svg()}</div><div><h1>ModelForge</h1>"
                "<p>Fine-tune a language model on your own machine: from a data file to a model you can talk "
                "to, without writing code.</p></div></div>", elem_id="mf-header")
        # Hidden until the page-load event has read the records (they open in the background while
        # the page draws, issue 18): shown to a new user, never flashed at one who has trained.
        banner = gr.HTML(BANNER, elem_id="mf-banner", visible=False)
        # wrap: on a phone all six tabs stay in sight (in two rows), not folded into a "..." menu.
        with gr.Tabs(elem_id="mf-tabs", overflow_behavior="wrap") as tabs:
            with gr.Tab("1. Dataset", id="dataset", elem_id="tab-dataset"):
                ds = dataset_tab.build(ctx, initial)
            with gr.Tab("2. Hardware", id="hardware", elem_id="tab-hardware") as hw_tab_el:
                hw = hardware_tab.build(ctx)
            with gr.Tab("3. Configure", id="configure", elem_id="tab-configure") as cfg_tab:
                cfg = configure_tab.build(ctx, initial)
            with gr.Tab("4. Train", id="train", elem_id="tab-train") as train_tab_el:
                tr = train_tab.build(ctx)
            with gr.Tab("5. Models", id="models", elem_id="tab-models") as models_tab_el:
                mo = models_tab.build(ctx)
            with gr.Tab("6. Playground", id="playground", elem_id="tab-playground") as play_tab_el:
                pg = playground_tab.build(ctx)
        gr.HTML("<div class='mf-footer'>REST: <a href='/api/health' target='_blank'>/api/health</a> · "
                "<a href='/api/info' target='_blank'>/api/info</a> · every action is also a named API "
                "endpoint (see “Use via API” below)</div>")

        to_config = configure_tab.values_to_config
        dataset_tab.wire(ds, ctx, cfg.inputs, cfg.by_name, to_config)
        train_tab.wire(tr, ctx, cfg.inputs, to_config)

        def _apply(choice, task, *vals):
            report = hardware_tab.probe_report()
            recs, note = hardware_tab.recommendations(report, task or "text-generation")
            current = to_config(vals)
            new = hardware_tab.apply_recommendation(recs, choice, task or "text-generation", current)
            gr.Info(hardware_tab.apply_message(choice, current, new))
            return [*configure_tab.config_to_values(new), configure_tab.command_text(new),
                    gr.Tabs(selected="configure")]

        hw.apply.click(guard(_apply), [hw.choice, hw.task, *cfg.inputs], [*cfg.inputs, cfg.command, tabs],
                       api_visibility="private")

        def _open_playground(state):
            run_id = (state or {}).get("run_id")
            model_id = ctx.store.get_run(run_id).model_id if run_id else None
            return gr.Tabs(selected="playground"), playground_tab.refresh_model_list(ctx, model_id)

        tr.open_playground.click(guard(_open_playground), tr.state, [tabs, pg.model], api_visibility="private")

        def _open_models(state):
            run_id = (state or {}).get("run_id")
            model_id = ctx.store.get_run(run_id).model_id if run_id else None
            return [gr.Tabs(selected="models"), *models_tab.refresh_outputs(ctx, model_id)]

        tr.open_models.click(guard(_open_models), tr.state, [tabs, *mo.outputs], api_visibility="private")

        def _models(selected):
            return models_tab.refresh_outputs(ctx, selected)

        def _players(selected):
            return playground_tab.refresh_model_list(ctx, selected)

        quick = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
        models_tab_el.select(guard(_models), mo.choice, mo.outputs, **quick)
        play_tab_el.select(guard(_players), pg.model, pg.model, **quick)
        pg.refresh.click(guard(_players), pg.model, pg.model, **quick)
        cfg_tab.select(configure_tab.refresh_command, cfg.inputs, cfg.command, **quick)

        def _banner():
            return gr.HTML(visible=not has_trained(ctx))

        tr.done.change(_banner, None, banner, **quick)  # a run just finished: the hint has served
        # The first page draws with the Dataset tab's component types only; the other tabs'
        # widgets are shown right after it is up, then the other load events run (first_screen.py).
        later = [hw_tab_el, cfg_tab, train_tab_el, models_tab_el, play_tab_el]
        # The preview, histogram and report stay hidden until a check fills them (no empty panels
        # for a new user): deferred with the later tabs, but not revealed on load.
        empty_until_validated = ds.outputs[2:]
        deferred = first_screen.defer(blocks, later, also=empty_until_validated)
        shown_on_load = [b for b in deferred if all(b is not e for e in empty_until_validated)]
        loaded = first_screen.reveal_on_load(blocks, shown_on_load)
        loaded.then(_banner, None, banner, **quick)
        loaded.then(tr.attach, tr.state, tr.outputs, **quick)
        loaded.then(guard(hardware_tab.refresh_outputs), hw.task, hw.outputs, **quick)
        loaded.then(guard(_models), mo.choice, mo.outputs, **quick)
        loaded.then(guard(_players), pg.model, pg.model, **quick)

        dataset_tab.register_api(ctx, default_config)
        hardware_tab.register_api(ctx)
        configure_tab.register_api(ctx)
        train_tab.register_api(ctx, default_config)
        models_tab.register_api(ctx)
        playground_tab.register_api(ctx)
    return blocks


def build_app(services: Any = None, *, auth: tuple[str, str] | None = None,
              restrict_paths: bool = False, oauth_allowed: frozenset[str] | None = None) -> tuple[gr.Blocks, Any]:
    """Build the Blocks and the FastAPI app that serves it at ``/`` beside ``/api/*``.

    Args:
        services: from ``app.services.build_services()`` (built here when None).
        auth: (user, password) the app asks for; None: no login.
        restrict_paths: a public app: a guest reaches only what it uploaded (see app/access.py and
            core/public_mode.py).
        oauth_allowed: "Sign in with Hugging Face" (a Space with ``hf_oauth: true``) instead of
            ``auth``, letting in these accounts or organisations only.

    Returns:
        (blocks, app): ``app`` is what uvicorn serves.
    """
    from app.api import build_api
    from components.common import gradio_upload_dir
    from components.dataset_tab import max_upload_bytes
    from components.models_tab import exports_dir

    if services is None:
        from app.services import build_services

        services = build_services()
    ctx = AppContext.from_services(services, restrict_paths=restrict_paths)
    blocks = build_blocks(ctx)
    # Gradio's queue is on already with one run of each event at a time (concurrency limit 1 unless
    # GRADIO_DEFAULT_CONCURRENCY_LIMIT says otherwise): calling blocks.queue() again would only
    # rebuild its FastAPI app, ~0.15 s of every start.
    api = build_api(services.jobs)
    from app.access import RequestGuard, oauth_dependency

    dependency = oauth_dependency(oauth_allowed) if oauth_allowed is not None else None
    # Before Gradio sees a request: bounded JSON bodies, and in a public app no FileData that
    # names anything but this app's own uploads (Gradio's check alone is skipped when mounted).
    api.add_middleware(RequestGuard, uploads=lambda: blocks.upload_file_set, restrict_files=restrict_paths,
                       signin=(dependency, frozenset(oauth_allowed)) if dependency else None,
                       served=lambda: [f for files in blocks.temp_file_sets for f in list(files)],
                       temp_folder=str(gradio_upload_dir()))
    if dependency is not None:  # /login/huggingface, /login/callback, /logout and the session cookie
        from gradio.oauth import attach_oauth

        attach_oauth(api)  # added after RequestGuard: the session is read before the guard runs
    app = gr.mount_gradio_app(
        api, blocks, path="/", auth=auth if dependency is None else None, auth_dependency=dependency,
        auth_message="ModelForge: log in to continue.",
        theme=theme(), css=css(), js=toasts_js(), favicon_path=str(LOGO) if LOGO.exists() else None,
        allowed_paths=[str(exports_dir())],  # merged models offered for download
        ssr_mode=False, run_history=False,   # run history would keep inputs (e.g. a Hub token)
        footer_links=["api", "gradio"], show_error=False,
        # Gradio refuses bigger uploads before they reach the disk (HTTP 413); the Dataset tab
        # checks again with a message that says how to raise MODELFORGE_MAX_UPLOAD_MB.
        max_file_size=max_upload_bytes(),
    )
    # What launch() would do: with has_launched False (mounted apps), Gradio skips its own check of
    # which server paths a FileData may name and copies any of them into its cache.
    blocks.has_launched = True
    app.state.modelforge = ctx
    return blocks, app


# -- serving --------------------------------------------------------------------------------------
@dataclass
class Launched:
    """A running app (returned by ``launch(block=False)``)."""

    url: str
    server: Any
    thread: threading.Thread
    blocks: gr.Blocks
    app: Any
    share_url: str | None = None

    def close(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "localhost") else "127.0.0.1", port))
        except OSError:
            return False
    return True


def _setup_logging() -> None:
    from components.common import fault_log_path

    logger = logging.getLogger("modelforge")
    if not any(isinstance(h, logging.FileHandler) for h in logger.handlers):
        try:
            handler = logging.FileHandler(fault_log_path(), encoding="utf-8")
        except OSError:
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def should_open_browser(env: dict | None = None, platform: str | None = None) -> bool:
    """Whether ``modelforge ui`` opens the page in a browser: only where a person sits at a desktop.

    Linux (and other Unix) needs a display (``DISPLAY`` or ``WAYLAND_DISPLAY``); macOS and
    Windows always have one. Never in CI (``CI`` set), on a Hugging Face Space (``SPACE_ID``),
    over SSH without a forwarded display, or with ``MODELFORGE_NO_BROWSER=1``. A share link does
    not change it: the page opened is the local one, for the person who started the app.
    """
    import sys

    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if env.get("MODELFORGE_NO_BROWSER", "") not in ("", "0") or env.get("CI") or env.get("SPACE_ID"):
        return False
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _open_browser(url: str) -> None:
    import webbrowser

    try:
        webbrowser.open(url, new=2)
    except Exception as exc:  # noqa: BLE001 - no browser: the printed address is enough
        log.info("could not open a browser: %s", exc)


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: str | None = None,
           no_auth: bool = False, block: bool = True, services: Any = None,
           open_browser: bool = False) -> Launched:
    """Serve the app (``modelforge ui``).

    Args:
        host: interface to listen on (0.0.0.0 on a Space).
        port: TCP port.
        share: also open a public gradio.live link (needs a login, see :func:`resolve_auth`).
        auth: USER:PASS; default ``MODELFORGE_AUTH``.
        no_auth: allow a public app without a login.
        block: serve until Ctrl+C (the CLI); False returns at once (tests, notebooks).
        services: prebuilt services (tests); built from MODELFORGE_HOME when None.
        open_browser: open the page in the default browser when :func:`should_open_browser` says
            there is a desktop (the CLI passes True unless ``--no-browser``; only with ``block``).

    Raises:
        ModelForgeError: a public app without a login, a bad --auth, or a busy port.
    """
    import uvicorn

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.access import allow_list, oauth_available

    space = is_restricted_env()
    oauth = space and not (auth or os.environ.get("MODELFORGE_AUTH")) and oauth_available()
    login = None if oauth else resolve_auth(share, auth, no_auth)
    if space:
        host = "0.0.0.0"
    if not _port_free(host, port):
        raise ModelForgeError(f"port {port} is already in use", f"pass --port {port + 1} or stop the other app")
    _setup_logging()
    if services is None:
        from app.services import build_services

        services = build_services(defer_store=True)  # opened below, once the server listens
    blocks, app = build_app(services, auth=login, restrict_paths=bool(share or space),
                            oauth_allowed=allow_list() if oauth else None)
    startup_gc.resume()  # `modelforge ui` paused the cyclic GC for the start-up (app/startup_gc.py)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, name="modelforge-http", daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise ModelForgeError(f"the web server could not start on {host}:{port}",
                                  "see the messages above; try another --port")
        time.sleep(0.05)
    _open_store(services, server, thread)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{port}/"
    running = Launched(url=url, server=server, thread=thread, blocks=blocks, app=app)
    if share:
        running.share_url = _open_share_link(blocks, shown, port)
    if not block:
        return running
    print(f"ModelForge is running at {url}" + (f" and {running.share_url}" if running.share_url else "")
          + (" (login required)" if login else " (Sign in with Hugging Face)" if oauth else "") + "  —  Ctrl+C to stop", flush=True)
    if open_browser and should_open_browser():
        _open_browser(url)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("\nstopping ModelForge…", flush=True)
        running.close()
    return running


def _open_store(services: Any, server: Any, thread: threading.Thread) -> None:
    """Open a deferred record store now, while the browser fetches the first page, and wait for it.

    Raises:
        DatabaseDamagedError: the database is damaged (the server is stopped first), as when
            the store was opened before the server started.
    """
    from core.deferred import Deferred

    if not isinstance(services.store, Deferred):
        return
    try:
        services.store.start().get()
    except BaseException:
        server.should_exit = True
        thread.join(10)
        raise


def _open_share_link(blocks: gr.Blocks, host: str, port: int) -> str | None:
    """A gradio.live tunnel to the local server; None (with a message) when it cannot be made."""
    try:
        from gradio import networking

        url = networking.setup_tunnel(local_host=host, local_port=port, share_token=blocks.share_token,
                                      share_server_address=None, share_server_tls_certificate=None)
        blocks.share_url = url
        return url
    except Exception as exc:  # noqa: BLE001 - offline, firewalled: serve locally anyway
        print(f"warning: could not create a share link ({type(exc).__name__}: {exc}); "
              "serving locally only", flush=True)
        return None
