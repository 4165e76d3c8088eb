// Frontend of the hello-rust example plugin. The Toru UI loads this file and calls mount/unmount.
(function () {
  "use strict";
  window.ToruPlugins = window.ToruPlugins || {};
  window.ToruPlugins["hello-rust"] = {
    mount: function (container, api) {
      var root = document.createElement("div");
      root.className = "hello-rust";
      var title = document.createElement("h2");
      title.textContent = "Hello from Rust";
      var message = document.createElement("p");
      message.setAttribute("data-testid", "hello-message");
      message.textContent = "Loading…";
      var count = document.createElement("p");
      count.setAttribute("data-testid", "hello-counter");
      var button = document.createElement("button");
      button.textContent = "Count a visit";
      root.appendChild(title);
      root.appendChild(message);
      root.appendChild(count);
      root.appendChild(button);
      container.appendChild(root);

      function show(n) { count.textContent = "Counter (kept in the host's store): " + n; }
      api.fetch("/").then(function (r) { return r.json(); }).then(function (j) {
        message.textContent = j.message + " (instance " + j.instance_id + ")";
      }).catch(function (e) { message.textContent = "Error: " + e; });
      api.fetch("/counter").then(function (r) { return r.json(); }).then(function (j) { show(j.counter); });
      button.addEventListener("click", function () {
        api.fetch("/counter", { method: "POST" }).then(function (r) { return r.json(); }).then(function (j) {
          show(j.counter);
          if (api.showToast) api.showToast("Counter is now " + j.counter);
        });
      });
    },
    unmount: function (container) {
      while (container.firstChild) container.removeChild(container.firstChild);
    }
  };
})();
