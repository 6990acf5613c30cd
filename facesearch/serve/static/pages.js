// Every page: a form with class "confirm" asks first, in the words of its data-confirm attribute (read as text:
// a name in it is never code). The pages hold no inline script or event handler; the Content-Security-Policy
// forbids them.
document.addEventListener("submit", function (event) {
  const form = event.target;
  if (form.classList && form.classList.contains("confirm") && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
