"""Settings sources shared by the import tests of several tiers."""

# The command of issue 24 (item 3), as a kohya_ss user pastes it: Windows paths, a near miss
# (--net_dim) and --use_8bit_adam.
ISSUE_24_COMMAND = (
    'accelerate launch --num_cpu_threads_per_process 1 train_network.py '
    '--pretrained_model_name_or_path="C:\\sd\\models\\model.safetensors" '
    '--train_data_dir="C:\\lora\\train" --reg_data_dir="C:\\lora\\reg" '
    '--output_dir="C:\\lora\\out" --resolution=512,512 --save_every_n_epochs=1 '
    '--save_model_as=safetensors --clip_skip=2 --seed=42 --color_aug --flip_aug '
    '--min_bucket_reso=320 --max_bucket_reso=960 --learning_rate=1e-4 --net_dim=128 '
    '--xformers --mixed_precision=fp16 --save_precision=fp16 --max_train_epochs=10 '
    '--network_module=networks.lora --caption_extension=.txt --use_8bit_adam --enable_bucket')
