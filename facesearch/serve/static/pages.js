// Every page: a form with class "confirm" asks first, in the words of its data-confirm attribute (read as text:
// a name in it is never code); the merge form's question names both subjects, the one chosen in its list too.
// The pages hold no inline script or event handler; the Content-Security-Policy forbids them.
function question(form) {
  if (form.dataset.mergeFrom !== undefined) {
    const into = form.elements.into.value, faces = form.dataset.mergeFaces;
    return "Merge " + form.dataset.mergeFrom + " into " + into + "? " + form.dataset.mergeFrom + "'s " + faces +
      " face" + (faces === "1" ? "" : "s") + " become " + into + "'s and " + form.dataset.mergeFrom +
      " is deleted; there is no undo (rename and delete faces to take it apart).";
  }
  return form.dataset.confirm;
}

document.addEventListener("submit", function (event) {
  const form = event.target;
  if (form.classList && form.classList.contains("confirm") && !window.confirm(question(form))) {
    event.preventDefault();
  }
});
