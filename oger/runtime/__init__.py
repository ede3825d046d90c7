"""How torch runs on the device a process has, behind one seam (`device.Runtime`: device, precision
and autocast, attention, batch threads, decode context), with the CPU answers in their own modules: a
small model's batch split over CPU threads (`cpu_threads`), bf16-mixed precision where the CPU has
native bf16 (`precision`) and oneDNN-packed linear weights for decoding (`packed_linear`)."""
