() => {
  // Gradio groups the toasts of one kind into one box, and a box holding more than one message
  // never times out: it stayed on the page long after the problem was fixed. Close each box a
  // few seconds after its newest message, with its own close button (no DOM surgery).
  const SECONDS = 8;  // keep in step with TOAST_SECONDS in components/common.py
  const timers = new WeakMap();
  const arm = (box) => {
    const count = box.querySelectorAll(".toast-message-item").length;
    const known = timers.get(box);
    if (known && known.count === count) return;
    if (known) clearTimeout(known.id);
    const id = setTimeout(() => {
      const close = box.querySelector("[data-testid='toast-close']");
      if (box.isConnected && close) close.click();
    }, SECONDS * 1000);
    timers.set(box, { id, count });
  };
  new MutationObserver(() => document.querySelectorAll(".toast-body").forEach(arm))
    .observe(document.body, { childList: true, subtree: true });
}
