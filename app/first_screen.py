"""Draw the first screen with only the component types it shows; show the rest right after.

Gradio's front end (6.31) fetches the code (a JS module, usually with its CSS) of every
component in the page's config that is not ``visible=False``, and draws nothing until all of it
has arrived and been parsed: the tabs a user has not opened yet included. Six tabs use ~30
component types, ~100 requests against ~36 for a bare app, and that was most of the gap between
ModelForge's first page and a bare Gradio app's (issue 18). Hiding a layout block is not enough:
each component's own ``visible`` decides whether its code is fetched.

So the components of the later tabs whose type the first screen does not use start hidden
(:func:`defer`), and one page-load event (:func:`reveal_on_load`) shows them again as soon as
the first screen is up; their code then arrives while the user reads the first tab. Every
component still exists in the Blocks from the start, so cross-tab wiring and the named API
endpoints are unchanged. Only components that start visible are deferred, and the page's other
load events are chained after the reveal, so an event that hides one of them (a Playground
panel for another task, say) always runs after it, never before.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable

import gradio as gr
from gradio.blocks import Block, BlockContext


def _walk(block: Block) -> Iterable[Block]:
    yield block
    for child in getattr(block, "children", None) or []:
        yield from _walk(child)


def _shown(block: Block) -> bool:
    return getattr(block, "visible", True) is True


@functools.cache
def _can_hide(cls: type) -> bool:
    """Whether the front end honours ``visible`` for this class (not gr.State, gr.Timer...)."""
    return "visible" in inspect.signature(cls.__init__).parameters


def block_type(block: Block) -> str:
    """The name the front end loads a block's code by (``nativeplot`` for a BarPlot...)."""
    return block.get_block_name()


def first_screen_types(root: BlockContext, later: list[BlockContext]) -> set[str]:
    """Types of the blocks drawn on the first screen: everything shown outside ``later``."""
    skip = {id(b) for tab in later for b in _walk(tab) if b is not tab}
    return {block_type(b) for b in _walk(root) if id(b) not in skip and _shown(b)}


def defer(root: BlockContext, later: list[BlockContext], also: Iterable[Block] = ()) -> list[Block]:
    """Hide, until :func:`reveal_on_load` shows them, the blocks the first screen can do without.

    Call it inside ``with gr.Blocks() as root`` once every tab is built (before the ``with``
    ends: Gradio writes the page's config then).

    Args:
        root: the Blocks being built.
        later: the tabs not shown first: their blocks of a type the first screen does not use
            are deferred.
        also: first-screen blocks that are empty until an action fills them (a plot before any
            data): deferred too, so their type is not needed for the first drawing.

    Returns:
        The blocks now hidden, to pass to :func:`reveal_on_load`.
    """
    extra = [b for b in also if _shown(b) and _can_hide(type(b))]
    for b in extra:
        b.visible = False
    needed = first_screen_types(root, later)
    deferred = [b for tab in later for b in _walk(tab)
                if b is not tab and _shown(b) and _can_hide(type(b)) and block_type(b) not in needed]
    for b in deferred:
        b.visible = False
    return extra + deferred


def reveal_on_load(root: gr.Blocks, deferred: list[Block]):
    """One page-load event that shows ``deferred`` again; chain the page's other load events
    on the returned dependency (``.then(...)``) so that none of them can run before it.
    """
    updates = [gr.update(visible=True) for _ in deferred]

    def _reveal():
        if not updates:
            return None
        return list(updates) if len(updates) > 1 else updates[0]

    return root.load(_reveal, None, deferred, api_visibility="private", concurrency_limit=None,
                     show_progress="hidden")
