"use strict";
document.getElementById("status").textContent = "sysupd";
