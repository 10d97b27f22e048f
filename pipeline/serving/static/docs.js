// nsnet API docs: Swagger UI (served from the installed package, no CDN) on /openapi.json.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // never send the spec to an online validator
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
