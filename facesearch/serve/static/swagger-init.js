// /api/docs: Swagger UI (its script is the fastapi-offline package's copy, served by this server) over the
// API's OpenAPI document. A file, not an inline script: the Content-Security-Policy forbids inline script.
window.addEventListener("DOMContentLoaded", function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
