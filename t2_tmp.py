import numpy as np, keras, keras_sft
from tests.test_shared_teacher import lora_model, images, with_lora, fit

for n in [None, ("conv", "dense"), ("dense", "embed")]:
    keras.utils.set_random_seed(0)
    s = lora_model()
    x, y = images()
    [
        s.get_layer(k).enable_lora(2)
        for k in (n or ("conv", "einsum", "dense", "embed"))
    ]
    m = keras_sft.SFTModel(s, lambda_=1.0, cache_teacher=False)
    fit(m, x, y, epochs=1)
    tr = s.predict(x, verbose=0)
    m.save_weights("/tmp/a.weights.h5")
    fit(m, x, y, epochs=1)
    m.load_weights("/tmp/a.weights.h5")
    print(
        n,
        np.abs(s.predict(x, verbose=0) - tr).max(),
        np.abs(np.asarray(s(x)) - tr).max(),
    )
