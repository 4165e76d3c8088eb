// Frontend of the hello-python example plugin. The Toru UI loads this file and calls mount/unmount.
// Plugin data is only ever put into the page with textContent, never innerHTML.
(function () {
  "use strict";
  var ID = "hello-python";

  // api.fetch is scoped to the plugin's route and resolves like window.fetch; accept a plain
  // object too, in case a host hands back parsed JSON.
  function getJson(api, path, init) {
    return Promise.resolve(api.fetch(path, init)).then(function (r) {
      if (r && typeof r.json === "function") {
        if (r.ok === false) throw new Error("HTTP " + r.status);
        return r.json();
      }
      return r;
    });
  }

  window.ToruPlugins = window.ToruPlugins || {};
  window.ToruPlugins[ID] = {
    mount: function (container, api) {
      var root = document.createElement("div");
      root.className = "hello-python";
      var title = document.createElement("h2");
      title.textContent = "Hello from Python";
      var message = document.createElement("p");
      message.setAttribute("data-testid", "hello-message");
      message.textContent = "Loading…";
      var count = document.createElement("p");
      count.setAttribute("data-testid", "hello-counter");
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = "Count a visit";
      root.appendChild(title);
      root.appendChild(message);
      root.appendChild(count);
      root.appendChild(button);
      container.appendChild(root);

      function show(n) { count.textContent = "Counter (kept in the host's store): " + n; }
      function fail(e) { count.textContent = "Error: " + e; }

      getJson(api, "/").then(function (j) {
        message.textContent = j.message + " (instance " + j.instance_id + ")";
      }).catch(function (e) { message.textContent = "Error: " + e; });
      getJson(api, "/counter").then(function (j) { show(j.counter); }).catch(fail);
      button.addEventListener("click", function () {
        button.disabled = true;
        getJson(api, "/counter", { method: "POST" }).then(function (j) {
          show(j.counter);
          if (api.showToast) api.showToast("Counter is now " + j.counter);
        }).catch(fail).then(function () { button.disabled = false; });
      });
    },
    unmount: function (container) {
      while (container.firstChild) container.removeChild(container.firstChild);
    }
  };
})();
