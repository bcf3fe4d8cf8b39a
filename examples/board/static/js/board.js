// Show a live character count under every post or comment body textarea.
document.querySelectorAll("textarea[name='body']").forEach((textarea) => {
  const counter = document.createElement("span");
  counter.className = "char-count";
  const update = () => {
    const n = textarea.value.length;
    counter.textContent = `${n} character${n === 1 ? "" : "s"}`;
  };
  textarea.after(counter);
  textarea.addEventListener("input", update);
  update();
});
